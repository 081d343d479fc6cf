"""Registration in NeMo-RL (7ea279a): `register()` puts the environment in
environments/utils.py's ENV_REGISTRY (via its register_env) and the Ray actor's FQN in
distributed/ray_actor_environment_registry.py's ACTOR_ENVIRONMENT_REGISTRY, whose absence makes
create_env raise. NeMo-RL itself is not installable here (the PyPI package is a placeholder), so
these modules are stood in with the names and behaviour read from that commit."""

import importlib
import sys
import types

import pytest


@pytest.fixture
def nemo_rl_stub(monkeypatch):
    env_registry = {"math": {"actor_class_fqn": "nemo_rl.environments.math_environment.MathEnvironment"}}

    def register_env(env_name, actor_class_fqn):  # as upstream: a second registration is an error
        if env_name in env_registry:
            raise ValueError(f"Env name {env_name} already registered")
        env_registry[env_name] = {"actor_class_fqn": actor_class_fqn}

    mods = {
        "nemo_rl": types.ModuleType("nemo_rl"), "nemo_rl.environments": types.ModuleType("nemo_rl.environments"),
        "nemo_rl.environments.utils": types.SimpleNamespace(ENV_REGISTRY=env_registry, register_env=register_env),
        "nemo_rl.distributed": types.ModuleType("nemo_rl.distributed"),
        "nemo_rl.distributed.ray_actor_environment_registry": types.SimpleNamespace(ACTOR_ENVIRONMENT_REGISTRY={}),
        "nemo_rl.distributed.virtual_cluster": types.SimpleNamespace(
            PY_EXECUTABLES=types.SimpleNamespace(SYSTEM=sys.executable)),
    }
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)
    return mods


def test_register_adds_both_registry_entries_once(nemo_rl_stub):
    from nemo_erprm.serving import nemo_rl_env

    nemo_rl_env.register()
    nemo_rl_env.register()  # idempotent: a launcher may call it twice
    entry = nemo_rl_stub["nemo_rl.environments.utils"].ENV_REGISTRY["erprm"]
    assert entry == {"actor_class_fqn": "nemo_erprm.serving.nemo_rl_env.PRMRewardEnvironmentActor"}
    actors = nemo_rl_stub["nemo_rl.distributed.ray_actor_environment_registry"].ACTOR_ENVIRONMENT_REGISTRY
    assert actors[entry["actor_class_fqn"]] == sys.executable
    # the FQN resolves to what create_env calls .options(...).remote(cfg) on
    module, _, attr = entry["actor_class_fqn"].rpartition(".")
    actor_cls = getattr(importlib.import_module(module), attr)
    if actor_cls is None:
        pytest.skip("ray is not installed: the actor class exists only with ray")
    assert hasattr(actor_cls, "options") and hasattr(actor_cls, "remote")
