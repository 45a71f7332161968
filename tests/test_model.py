"""SleepLM model and losses: shapes, masking, losses, overfitting, generation, save / load."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sleeplm.model.losses import (CaptionLoss, ClipLoss, SleepLMLoss, gather_features,
                            reconstruction_loss)
from sleeplm.model.network import (SLEEPLM_CHANNELS, SleepLM, SleepLMConfig, count_parameters,
                           load_model, save_model)

B, C, T = 3, 12, 1920


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def make_batch(cfg: SleepLMConfig, b: int = B, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    shape = ((b, 2 * cfg.context_epochs + 1) if cfg.context_epochs else (b,)) + (
        cfg.n_channels, cfg.samples_per_epoch)
    x = torch.randn(shape, generator=g)
    pos = cfg.channels.index("POSITION")
    x[..., pos, :] = torch.randint(-1, 5, (1,), generator=g).float()
    mask = torch.ones(b, cfg.n_channels, dtype=torch.bool)
    mask[0, 3] = False  # AIRFLOW absent in sample 0
    ids = torch.randint(3, cfg.vocab_size, (b, 10), generator=g)
    ids[1, 6:] = cfg.pad_id  # a shorter caption
    system = torch.tensor([0, 4, 2][:b] + [1] * max(0, b - 3))
    return x.half(), mask, ids, system


@pytest.fixture(scope="module")
def cfg():
    return SleepLMConfig.tiny()


@pytest.fixture
def model(cfg):
    torch.manual_seed(0)
    return SleepLM(cfg).eval()


def test_config_defaults_and_json_round_trip(cfg):
    default = SleepLMConfig()
    assert default.channels[:10] == SLEEPLM_CHANNELS
    assert default.channels[10:] == ("SPO2", "EMG_LEG")
    assert (default.patch_len, default.n_patches, default.samples_per_epoch) == (128, 15, 1920)
    assert default.spectral_patches
    for c in (default, cfg, SleepLMConfig.tiny(context_epochs=2)):
        assert SleepLMConfig.from_json(c.to_json()) == c
    with pytest.raises(ValueError):
        SleepLMConfig(d_model=30, n_heads=4)
    with pytest.raises(ValueError):
        SleepLMConfig(pad_id=2, eos_id=2)


def test_shapes_and_unit_norm(model, cfg):
    x, mask, ids, system = make_batch(cfg)
    emb, tokens, tmask = model.encode_signal(x, mask)
    N = cfg.n_channels * cfg.n_patches
    assert emb.shape == (B, cfg.embed_dim)
    assert tokens.shape == (B, N, cfg.d_model) and tmask.shape == (B, N)
    assert tmask.dtype == torch.bool and not tmask[0, 3 * cfg.n_patches: 4 * cfg.n_patches].any()
    assert tmask[1].all()
    temb = model.encode_text(ids)
    assert temb.shape == (B, cfg.embed_dim)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(B))
    torch.testing.assert_close(temb.norm(dim=-1), torch.ones(B))
    out = model(x, mask, ids, system)
    assert set(out) == {"loss", "contrastive", "caption", "reconstruction", "logit_scale"}
    assert all(v.shape == () and torch.isfinite(v) for v in out.values())
    assert out["logit_scale"].item() == pytest.approx(1 / 0.07, rel=1e-4)
    # the caption decoder's logits: one per decoder input token
    tok, dec_in, tgt = model.prepare_text(ids)
    logits = model.decoder(dec_in, system, tokens, tmask)
    assert logits.shape == (B, dec_in.shape[1], cfg.vocab_size)
    assert (dec_in[:, 0] == cfg.bos_id).all() and (tgt[0, -1] == cfg.eos_id)


def test_prepare_text_accepts_bos_eos_or_neither(model, cfg):
    plain = torch.tensor([[5, 6, 7, cfg.pad_id]])
    special = torch.tensor([[cfg.bos_id, 5, 6, 7, cfg.eos_id, cfg.pad_id]])
    a, b = model.prepare_text(plain), model.prepare_text(special)
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    assert a[0].tolist() == [[5, 6, 7, cfg.eos_id]]
    assert a[1].tolist() == [[cfg.bos_id, 5, 6, 7]]


def test_absent_channel_data_is_ignored(model, cfg):
    x, mask, ids, _ = make_batch(cfg)
    emb, tokens, tmask = model.encode_signal(x, mask)
    x2 = x.clone()
    x2[0, 3] = 1000.0 * torch.randn(T).half()  # sample 0's absent AIRFLOW
    emb2, tokens2, _ = model.encode_signal(x2, mask)
    assert torch.equal(emb, emb2)
    torch.testing.assert_close(tokens[tmask], tokens2[tmask], rtol=0, atol=0)
    gen1 = model.generate(x, mask, system=0, max_len=5)
    gen2 = model.generate(x2, mask, system=0, max_len=5)
    assert torch.equal(gen1, gen2)
    # the same data present does change the embedding
    mask3 = mask.clone()
    mask3[0, 3] = True
    assert not torch.allclose(model.encode_signal(x2, mask3)[0][0], emb[0])


def test_all_absent_sample_is_finite_and_data_independent(model, cfg):
    x, mask, ids, system = make_batch(cfg)
    mask[2] = False
    emb, tokens, tmask = model.encode_signal(x, mask)
    assert torch.isfinite(emb).all() and torch.isfinite(tokens).all() and not tmask[2].any()
    x2 = x.clone()
    x2[2] = torch.randn(C, T).half()
    assert torch.equal(model.encode_signal(x2, mask)[0][2], emb[2])
    model.train()
    out = model(x, mask, ids, system)
    assert all(torch.isfinite(v) for v in out.values())
    out["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_mask_broadcast_and_nan_input(model, cfg):
    x, _, _, _ = make_batch(cfg)
    per_channel = torch.ones(C, dtype=torch.bool)
    e1 = model.encode_signal(x, per_channel)[0]
    e2 = model.encode_signal(x, None)[0]
    torch.testing.assert_close(e1, e2)
    x[0, 5, :10] = float("nan")
    assert torch.isfinite(model.encode_signal(x, None)[0]).all()
    with pytest.raises(ValueError):
        model.encode_signal(x[:, :5], None)


def test_backward_and_overfit_fixed_batch(cfg):
    torch.manual_seed(0)
    model = SleepLM(cfg).train()
    x, mask, ids, system = make_batch(cfg, b=4)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        out = model(x, mask, ids, system)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.8 * losses[0], losses
    grads = [p.grad for p in model.parameters()]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("term", ["contrastive", "caption", "reconstruction"])
def test_zero_weight_removes_term(cfg, term):
    torch.manual_seed(0)
    c = SleepLMConfig.tiny(**{f"{term}_weight": 0.0})
    model = SleepLM(c).train()
    x, mask, ids, system = make_batch(c)
    torch.manual_seed(1)
    out = model(x, mask, ids, system)
    assert out[term].item() == 0.0
    others = [k for k in ("contrastive", "caption", "reconstruction") if k != term]
    torch.testing.assert_close(out["loss"], sum(out[k] for k in others))
    assert all(out[k].item() > 0 for k in others)
    out["loss"].backward()
    unused = {"contrastive": model.text, "caption": model.decoder,
              "reconstruction": None}[term]
    if unused is not None:
        assert all(p.grad is None for p in unused.parameters())
    else:
        assert model.signal.recon_w.grad is None and model.signal.mask_emb.grad is None


def test_contrastive_ids_change_only_the_contrastive_term(model, cfg):
    x, mask, ids, system = make_batch(cfg)
    other = torch.roll(ids, 1, dims=0)  # the contrastive texts of another pairing
    torch.manual_seed(3)
    a = model(x, mask, ids, system, mask_patches=False)
    torch.manual_seed(3)
    b = model(x, mask, ids, system, mask_patches=False, contrastive_ids=other)
    torch.manual_seed(3)
    same = model(x, mask, ids, system, mask_patches=False, contrastive_ids=ids)
    torch.testing.assert_close(a["caption"], b["caption"])
    torch.testing.assert_close(a["reconstruction"], b["reconstruction"])
    assert not torch.allclose(a["contrastive"], b["contrastive"])
    torch.testing.assert_close(a["contrastive"], same["contrastive"])


def test_spectral_patch_features():
    from sleeplm.model.network import SignalEncoder

    L = 128
    t = torch.arange(L) / 64.0
    sine = torch.sin(2 * math.pi * 12.5 * t)  # bin 25 of a 2-s patch at 64 Hz
    spec = SignalEncoder.log_spectrum(torch.stack([sine, torch.zeros(L)]))
    assert spec.shape == (2, L // 2 + 1) and int(spec[0].argmax()) == 25
    assert torch.equal(spec[1], torch.zeros(L // 2 + 1))  # an absent (zeroed) patch adds 0
    off = SleepLM(SleepLMConfig.tiny(spectral_patches=False))
    on = SleepLM(SleepLMConfig.tiny())
    assert not hasattr(off.signal, "spec_w")
    assert on.signal.spec_w.shape[1] == on.cfg.patch_len // 2 + 1
    x = torch.zeros(2, on.cfg.n_channels, on.cfg.samples_per_epoch)
    x[1, 6] = torch.sin(2 * math.pi * 13 * torch.arange(x.shape[-1]) / 64.0)
    assert not torch.allclose(*on.eval().encode_signal(x)[0])


def test_generate_is_bos_free_terminated_and_deterministic(model, cfg):
    x, mask, _, _ = make_batch(cfg)
    out = model.generate(x, mask, system=torch.tensor([0, 1, 4]), max_len=7)
    assert out.dtype == torch.long and out.shape[0] == B and 1 <= out.shape[1] <= 7
    assert not (out == cfg.bos_id).any()
    for row in out.tolist():
        if cfg.eos_id in row:
            k = row.index(cfg.eos_id)
            assert all(t == cfg.pad_id for t in row[k + 1:])
        else:
            assert len(row) == 7 and cfg.pad_id not in row
    assert torch.equal(out, model.generate(x, mask, system=torch.tensor([0, 1, 4]), max_len=7))
    # scripted decoder: row 0 says EOS at its 3rd token, the others never do
    V = cfg.vocab_size

    def fake(ids, system, memory, memory_valid):
        logits = torch.zeros(ids.shape[0], ids.shape[1], V)
        logits[:, :, 7] = 1.0
        logits[:, :, cfg.bos_id] = logits[:, :, cfg.pad_id] = 5.0  # must never be emitted
        if ids.shape[1] == 3:
            logits[0, -1, cfg.eos_id] = 9.0
        return logits

    model.decoder.forward = fake
    out = model.generate(x, mask, system="brain", max_len=6)
    assert out.tolist() == [[7, 7, cfg.eos_id, cfg.pad_id, cfg.pad_id, cfg.pad_id],
                            [7] * 6, [7] * 6]


def test_save_load_round_trip(tmp_path, model, cfg):
    x, mask, ids, system = make_batch(cfg)
    tok = tmp_path / "tok.json"
    tok.write_text("{}")
    save_model(model, tmp_path / "ckpt", tokenizer_path=tok)
    assert {p.name for p in (tmp_path / "ckpt").iterdir()} == {
        "config.json", "model.safetensors", "tokenizer.json"}
    loaded = load_model(tmp_path / "ckpt")
    assert loaded.cfg == cfg and not loaded.training
    assert loaded.decoder.tok_emb.weight.data_ptr() != 0
    for a, b in zip(model.encode_signal(x, mask), loaded.encode_signal(x, mask)):
        assert torch.equal(a, b)
    assert torch.equal(model.encode_text(ids), loaded.encode_text(ids))
    o1, o2 = model(x, mask, ids, system), loaded(x, mask, ids, system)
    for k in o1:
        assert torch.equal(o1[k], o2[k])
    assert torch.equal(model.generate(x, mask, max_len=5), loaded.generate(x, mask, max_len=5))


def test_default_checkpoint_and_missing_files(tmp_path, monkeypatch):
    from sleeplm.model.network import DEFAULT_CHECKPOINT, default_checkpoint

    monkeypatch.delenv("SLEEPLM_MODEL", raising=False)
    assert default_checkpoint() == DEFAULT_CHECKPOINT  # shipped in the repository
    model = load_model(DEFAULT_CHECKPOINT)
    assert set(SLEEPLM_CHANNELS) <= set(model.cfg.channels) and not model.training
    monkeypatch.setenv("SLEEPLM_MODEL", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="SLEEPLM_MODEL.*config.json"):
        default_checkpoint()
    with pytest.raises(FileNotFoundError, match="not a SleepLM checkpoint"):
        load_model(tmp_path)


def test_context_epochs(tmp_path):
    c = SleepLMConfig.tiny(context_epochs=1)
    model = SleepLM(c).eval()
    x, mask, ids, system = make_batch(c)
    assert x.shape == (B, 3, C, T)
    emb, tokens, tmask = model.encode_signal(x, mask)
    assert emb.shape == (B, c.embed_dim) and tokens.shape == (B, C * c.n_patches, c.d_model)
    # a neighbour matters to the centre embedding ...
    x2 = x.clone()
    x2[:, 0] = torch.randn_like(x2[:, 0].float()).half()
    assert not torch.allclose(model.encode_signal(x2, mask)[0], emb)
    # ... unless it is absent (edge of the night); and per-neighbour masks are accepted
    m3 = mask[:, None].expand(B, 3, C).clone()
    m3[:, 0] = False
    e_a, e_b = model.encode_signal(x, m3)[0], model.encode_signal(x2, m3)[0]
    assert torch.equal(e_a, e_b) and torch.isfinite(e_a).all()
    model.train()
    out = model(x, mask, ids, system)
    out["loss"].backward()
    assert torch.isfinite(out["loss"])
    assert model.generate(x, mask, max_len=3).shape[0] == B
    with pytest.raises(ValueError):
        model.encode_signal(x[:, 1], mask)


def test_clip_loss_hand_computation():
    img = F.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]), dim=-1)
    txt = F.normalize(torch.tensor([[0.9, 0.1], [0.5, 0.5], [-0.2, 1.0]]), dim=-1)
    scale = 10.0
    sims = [[scale * sum(a * b for a, b in zip(i, t)) for t in txt.tolist()] for i in img.tolist()]

    def ce(rows):
        return sum(-r[k] + math.log(sum(math.exp(v) for v in r)) for k, r in enumerate(rows)) / 3

    cols = [list(c) for c in zip(*sims)]
    expected = (ce(sims) + ce(cols)) / 2
    got = ClipLoss()(img, txt, torch.tensor(scale))
    assert got.item() == pytest.approx(expected, rel=1e-5)
    # the scale is clamped at 100
    assert ClipLoss()(img, txt, 1000.0).item() == pytest.approx(
        ClipLoss()(img, txt, 100.0).item())


def test_multi_positive_clip_loss():
    """Keys mark equal texts: with distinct keys the loss is the plain one; with two pairs
    sharing a key each of those rows' targets is split over both columns."""
    torch.manual_seed(0)
    img = F.normalize(torch.randn(4, 3), dim=-1)
    txt = F.normalize(torch.randn(4, 3), dim=-1)
    plain = ClipLoss()(img, txt, 7.0)
    assert ClipLoss()(img, txt, 7.0, torch.tensor([5, 6, 7, 8])).item() == pytest.approx(
        plain.item(), rel=1e-6)
    keys = torch.tensor([1, 2, 1, 3])
    logits = 7.0 * img @ txt.T
    target = torch.tensor([[0.5, 0, 0.5, 0], [0, 1, 0, 0], [0.5, 0, 0.5, 0], [0, 0, 0, 1.0]])
    by_hand = (-(target * logits.log_softmax(1)).sum(1).mean()
               - (target * logits.T.log_softmax(1)).sum(1).mean()) / 2
    assert ClipLoss()(img, txt, 7.0, keys).item() == pytest.approx(by_hand.item(), rel=1e-6)
    # when the equal texts have exactly equal embeddings (no dropout) the plain loss is the
    # same function; the keys matter once the two embeddings differ (dropout in training)
    same = txt.clone()
    same[2] = same[0]
    assert ClipLoss()(img, same, 7.0, keys).item() == pytest.approx(
        ClipLoss()(img, same, 7.0).item(), rel=1e-6)
    near = same.clone()
    near[2] = F.normalize(same[0] + 0.3 * torch.randn(3), dim=-1)
    assert ClipLoss()(img, near, 7.0, keys).item() != pytest.approx(
        ClipLoss()(img, near, 7.0).item(), rel=1e-4)


def test_extra_negative_columns():
    """Extra text columns join the signal-to-text softmax only; one whose key equals a pair's
    key is a positive of that signal."""
    torch.manual_seed(2)
    img = F.normalize(torch.randn(3, 4), dim=-1)
    txt = F.normalize(torch.randn(3, 4), dim=-1)
    extra = F.normalize(torch.randn(2, 4), dim=-1)
    keys, extra_keys = torch.tensor([1, 2, 3]), torch.tensor([9, 2])
    got = ClipLoss()(img, txt, 5.0, keys, extra, extra_keys).item()
    li = 5.0 * img @ torch.cat([txt, extra]).T
    ti = torch.tensor([[1.0, 0, 0, 0, 0], [0, 0.5, 0, 0, 0.5], [0, 0, 1, 0, 0]])
    lt = 5.0 * txt @ img.T
    want = (-(ti * li.log_softmax(1)).sum(1).mean()
            + F.cross_entropy(lt, torch.arange(3))) / 2
    assert got == pytest.approx(want.item(), rel=1e-6)
    with pytest.raises(ValueError, match="need keys"):
        ClipLoss()(img, txt, 5.0, None, extra, extra_keys)


def test_keysets_make_every_true_text_a_positive():
    """Signal 0 drew "no arousal" (key 1) but "no respiratory events" (key 2) is true of it
    too: signal 1's text with key 2 is then a positive of signal 0, both ways."""
    torch.manual_seed(3)
    img = F.normalize(torch.randn(3, 4), dim=-1)
    txt = F.normalize(torch.randn(3, 4), dim=-1)
    extra = F.normalize(torch.randn(1, 4), dim=-1)
    keys = torch.tensor([1, 2, 3])
    keysets = torch.tensor([[1, 2, -1], [2, -1, -1], [3, 2, 7]])
    li = 5.0 * img @ torch.cat([txt, extra]).T
    ti = torch.tensor([[1.0, 1, 0, 0], [0, 1, 0, 0], [0, 1, 1, 1]])  # extra column key 7
    lt = 5.0 * txt @ img.T
    tt = torch.tensor([[1.0, 0, 0], [1, 1, 1], [0, 0, 1]])
    want = (-(ti / ti.sum(1, keepdim=True) * li.log_softmax(1)).sum(1).mean()
            - (tt / tt.sum(1, keepdim=True) * lt.log_softmax(1)).sum(1).mean()) / 2
    got = ClipLoss()(img, txt, 5.0, keys, extra, torch.tensor([7]), keysets)
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    # keysets holding only each signal's own key are the plain multi-positive loss
    own = torch.tensor([[1, -1], [2, -1], [3, -1]])
    assert ClipLoss()(img, txt, 5.0, keys, keysets=own).item() == pytest.approx(
        ClipLoss()(img, txt, 5.0, keys).item(), rel=1e-6)


def test_weighted_multi_text_contrastive_loss():
    from sleeplm.model.losses import SleepLMLoss

    torch.manual_seed(1)
    img = F.normalize(torch.randn(5, 4), dim=-1)
    texts = F.normalize(torch.randn(3, 5, 4), dim=-1)
    loss = SleepLMLoss(1.0, 0.0, 0.0)
    terms = [ClipLoss()(img, t, 10.0).item() for t in texts]
    assert loss(image_features=img, text_features=texts, logit_scale=10.0)[
        "contrastive"].item() == pytest.approx(sum(terms) / 3, rel=1e-6)
    loss.text_weights = (2.0, 1.0, 1.0)
    assert loss(image_features=img, text_features=texts, logit_scale=10.0)[
        "contrastive"].item() == pytest.approx((2 * terms[0] + terms[1] + terms[2]) / 4,
                                               rel=1e-6)
    keys = torch.arange(15).reshape(5, 3)  # [B, S], all distinct: the same as without
    assert loss(image_features=img, text_features=texts, logit_scale=10.0, text_keys=keys)[
        "contrastive"].item() == pytest.approx((2 * terms[0] + terms[1] + terms[2]) / 4,
                                               rel=1e-6)
    loss.text_weights = (1.0, 1.0)
    with pytest.raises(ValueError, match="2 contrastive text weights for 3"):
        loss(image_features=img, text_features=texts, logit_scale=10.0)


def test_gather_features_is_identity_without_distributed():
    a, b = torch.randn(4, 8), torch.randn(4, 8)
    for gwg in (True, False):
        for local in (True, False):
            ga, gb = gather_features(a, b, gather_with_grad=gwg, local_loss=local)
            assert ga is a and gb is b


def test_caption_and_reconstruction_losses():
    logits = torch.randn(2, 3, 7)
    tgt = torch.tensor([[1, 2, 0], [3, 0, 0]])
    got = CaptionLoss(pad_id=0)(logits, tgt)
    ref = F.cross_entropy(torch.stack([logits[0, 0], logits[0, 1], logits[1, 0]]),
                          torch.tensor([1, 2, 3]))
    torch.testing.assert_close(got, ref)
    pred, target = torch.zeros(2, 4, 5), torch.ones(2, 4, 5)
    target[0, 0] = 3.0
    m = torch.zeros(2, 4, dtype=torch.bool)
    m[0, 0] = m[1, 2] = True
    assert reconstruction_loss(pred, target, m).item() == pytest.approx((9 + 1) / 2)
    assert reconstruction_loss(pred, target, torch.zeros_like(m)).item() == 0.0
    out = SleepLMLoss(0.0, 2.0, 0.0)(logits=logits, targets=tgt)
    torch.testing.assert_close(out["loss"], 2 * ref)


def test_default_config_size(tmp_path):
    model = SleepLM(SleepLMConfig())
    n = count_parameters(model)
    save_model(model, tmp_path)
    size = (tmp_path / "model.safetensors").stat().st_size
    print(f"default SleepLM: {n:,} parameters, {size / 1e6:.1f} MB float32 safetensors")
    assert size <= 25e6
    assert abs(size - 4 * n) < 0.01 * size  # one float32 per parameter, no duplicates
