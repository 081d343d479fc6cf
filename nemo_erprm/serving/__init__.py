"""Serving stage: the PRM as a reward model. :mod:`.service` (segmentation, scoring, reward),
:mod:`.batcher` (dynamic batching, back-pressure, timeouts), :mod:`.http_app` (FastAPI: our
``/score``, OpenRLHF's ``/get_reward``, ``/health``, ``/metrics``), :mod:`.aligner`
(NeMo-Aligner's PyTriton ``reward_model`` contract), :mod:`.verl_reward` (verl adapter),
:mod:`.rollout_text` (RL rollouts back to question and response), :mod:`.fallback_monitor`
(the fallback-rate alarm);
CLI ``tools/serve_prm.py``."""
