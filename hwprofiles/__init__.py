"""Hardware profiles, data only: one YAML per device (cpu/, gpu/, link/, memory/), per system (systems/) and
the measured kernel tables (calibration/). The loader is ``lia_model.profiles`` (``load_system``, ``load_profile``).
"""
