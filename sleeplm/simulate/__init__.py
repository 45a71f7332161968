"""Realistic simulated PSG nights with known truth, driven by real hypnograms.

No real overnight PSG can be downloaded where this project is built, so simulated nights stand
in for them in the corpus, the model's training, the demo and the tests. They are simulations:
every result computed on them says so.
"""

from sleeplm.simulate.library import EXAMPLE_PATIENTS, example_library, simulate_library
from sleeplm.simulate.night import SimulatedNight, simulate_night
from sleeplm.simulate.profiles import PROFILES, Profile, get_profile
from sleeplm.simulate.study import write_study

__all__ = [
    "simulate_night",
    "SimulatedNight",
    "write_study",
    "simulate_library",
    "example_library",
    "EXAMPLE_PATIENTS",
    "PROFILES",
    "Profile",
    "get_profile",
]
