"""Per-family case generators: each module here exports ``SPECS``, a tuple of ``LossSpec``
(``compare.registry`` collects them; a new module is picked up without editing any list)."""
