"""Evaluation stage: Best-of-N selection with a PRM (:mod:`.candidates`, :mod:`.scorers`,
:mod:`.cache`, :mod:`.aggregate`, :mod:`.best_of_n`, :mod:`.report`), step-level evaluation in
the ProcessBench format (:mod:`.processbench`); CLI ``tools/best_of_n.py`` (:mod:`.cli`)."""
