"""Training stage: config (:mod:`.config`), callbacks (:mod:`.callbacks`); the entry point is
:mod:`nemo_erprm.train` (``python -m nemo_erprm.train --config conf/<recipe>.yaml``)."""
