"""`nemo_rl_env.register()` against NeMo-RL's environment registries, with stand-ins.

What is stood in, and why: NeMo-RL cannot be installed here. The PyPI package `nemo-rl` is an
empty placeholder (0.0.0, no `nemo_rl` module), and the repository at the commit this
contract was read from, NVIDIA-NeMo/RL 7ea279abfbeb698b092856d0dab61e7cf39bc909, declares
`requires-python = ">=3.13.14,<3.14"` (this project runs 3.11) and pins `torch==2.11.0`
beside our torch 2.13. The stand-ins are the four names `register()` and
`create_env` use, copied in behaviour from that commit:

- `nemo_rl.environments.utils.ENV_REGISTRY` (a dict seeded with a built-in entry) and
  `register_env(env_name, actor_class_fqn)`, which raises `ValueError` on a second
  registration of the same name;
- `nemo_rl.distributed.ray_actor_environment_registry.ACTOR_ENVIRONMENT_REGISTRY` and its
  `get_actor_python_env(fqn)`, which raises `ValueError` for an FQN missing from it;
- `nemo_rl.distributed.virtual_cluster.PY_EXECUTABLES.SYSTEM` (`sys.executable`);
- the lookup half of `nemo_rl.environments.utils.create_env`: `assert env_name in
  ENV_REGISTRY`, `hydra.utils.get_object(fqn)` (here `importlib`), `get_actor_python_env`.

What it still covers: both registry entries are written by `register()` with the names and
shapes upstream reads, a second `register()` does not hit upstream's duplicate error, the
FQN imports to a Ray actor class (real Ray, when installed) with `.options`/`.remote` as
`create_env` calls them, and without `register()` the lookup fails as upstream's does. Not
covered: starting the actor (`create_env`'s `.options(runtime_env=...).remote(cfg)` on a
Ray cluster) and NeMo-RL's config loading; the environment's step/metrics contract is tested
against the live service in test_http_service.py."""

import importlib
import sys
import types

import pytest

UPSTREAM_COMMIT = "7ea279abfbeb698b092856d0dab61e7cf39bc909"


@pytest.fixture
def nemo_rl_stub(monkeypatch):
    env_registry = {"math": {"actor_class_fqn": "nemo_rl.environments.math_environment.MathEnvironment"}}
    actor_registry = {"nemo_rl.environments.math_environment.MathEnvironment": sys.executable}

    def register_env(env_name, actor_class_fqn):  # as upstream: a second registration is an error
        if env_name in env_registry:
            raise ValueError(f"Env name {env_name} already registered")
        env_registry[env_name] = {"actor_class_fqn": actor_class_fqn}

    def get_actor_python_env(actor_class_fqn):  # as upstream: an unregistered actor is an error
        if actor_class_fqn in actor_registry:
            return actor_registry[actor_class_fqn]
        raise ValueError(f"No actor environment registered for {actor_class_fqn}.")

    mods = {
        "nemo_rl": types.ModuleType("nemo_rl"), "nemo_rl.environments": types.ModuleType("nemo_rl.environments"),
        "nemo_rl.environments.utils": types.SimpleNamespace(ENV_REGISTRY=env_registry, register_env=register_env),
        "nemo_rl.distributed": types.ModuleType("nemo_rl.distributed"),
        "nemo_rl.distributed.ray_actor_environment_registry": types.SimpleNamespace(
            ACTOR_ENVIRONMENT_REGISTRY=actor_registry, get_actor_python_env=get_actor_python_env),
        "nemo_rl.distributed.virtual_cluster": types.SimpleNamespace(
            PY_EXECUTABLES=types.SimpleNamespace(SYSTEM=sys.executable)),
    }
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)
    return mods


def create_env_lookup(mods, env_name):
    """create_env at 7ea279a up to the actor start: (actor class, its python executable)."""
    registry = mods["nemo_rl.environments.utils"].ENV_REGISTRY
    assert env_name in registry, f"Env name {env_name} is not registered in ENV_REGISTRY."
    fqn = registry[env_name]["actor_class_fqn"]
    module, _, attr = fqn.rpartition(".")
    actor_class = getattr(importlib.import_module(module), attr)  # hydra.utils.get_object
    return actor_class, mods["nemo_rl.distributed.ray_actor_environment_registry"].get_actor_python_env(fqn)


def test_register_adds_both_registry_entries_once(nemo_rl_stub):
    from nemo_erprm.serving import nemo_rl_env

    assert nemo_rl_env.UPSTREAM_COMMIT == UPSTREAM_COMMIT  # the contract both sides were read from
    with pytest.raises(AssertionError, match="not registered"):
        create_env_lookup(nemo_rl_stub, "erprm")
    nemo_rl_env.register()
    nemo_rl_env.register()  # idempotent: a launcher may call it twice
    entry = nemo_rl_stub["nemo_rl.environments.utils"].ENV_REGISTRY["erprm"]
    assert entry == {"actor_class_fqn": "nemo_erprm.serving.nemo_rl_env.PRMRewardEnvironmentActor"}
    actors = nemo_rl_stub["nemo_rl.distributed.ray_actor_environment_registry"].ACTOR_ENVIRONMENT_REGISTRY
    assert actors[entry["actor_class_fqn"]] == sys.executable
    actor_cls, executable = create_env_lookup(nemo_rl_stub, "erprm")
    assert executable == sys.executable
    if actor_cls is None:
        pytest.skip("ray is not installed: the actor class exists only with ray")
    assert hasattr(actor_cls, "options") and hasattr(actor_cls, "remote")  # what create_env calls
