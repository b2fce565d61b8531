"""Register ``--model glm-torch`` / ``glm-onnx`` with a stock lm-eval 0.4.13 (spec lm_eval_integration §1.3 C).

lm-eval 0.4.13 reads no entry points (spec §1.2), so the wheel installs ``glm_harness_lmeval.pth`` at the
site-packages root; its single line imports this module at interpreter start-up. All this module does then is put a
one-shot finder on ``sys.meta_path`` that waits for ``lm_eval.api.registry`` to be imported. When it is, the finder
wraps the module's ``exec_module`` so that, right after lm-eval's registry exists, the built-in models are registered
first (spec §1.3 E1) and our two names are added as lazy ``"module:Class"`` placeholders (no ``@register_model``,
spec §1.3 E3). Nothing GLM-related, no torch and no lm-eval is imported before that moment.

Rules (spec §6.1): import-light (no ``importlib.abc``: it costs ~30 ms at every start-up), idempotent (``install`` may
run from the ``.pth`` and again from a PEP 829 ``.start`` file or a wrapper), chained with other plugins' hooks
(spec §1.3 E2: delegate through ``importlib.util.find_spec`` after removing ourselves), and it never raises into
lm-eval: a failure is one line on stderr and lm-eval carries on with its built-in models.
"""

import sys

# Exactly the defining module and class (spec §1.3 E3), identical to pyproject's lm_eval.models entry points.
MODELS = {
    "glm-torch": "evaluation.lm_eval_plugin:GLMTorchLM",
    "glm-onnx": "evaluation.lm_eval_plugin:GLMOnnxLM",
}
_TARGET = "lm_eval.api.registry"
_HOOK_FLAG = "_glm_harness_lmeval_hook"


def register() -> None:
    """Add the GLM models to lm-eval's model registry (built-ins and entry-point plugins win on a name clash)."""
    import lm_eval.models  # noqa: F401  # spec §1.3 E1: built-ins first, or get_model never imports them
    from lm_eval.api.registry import model_registry

    for name, target in MODELS.items():
        if name not in model_registry:
            model_registry.register(name, target=target)


def _register_quietly() -> None:
    try:
        register()
    except Exception as exc:  # never break lm-eval because of this plugin
        print(f"[glm-harness] registering glm-torch/glm-onnx with lm_eval failed: {exc!r}", file=sys.stderr)


class _RegistryHook:
    """Meta-path finder that fires once, when ``lm_eval.api.registry`` is first imported (duck-typed finder)."""

    _glm_harness_lmeval_hook = True

    def find_spec(self, fullname, path=None, target=None):  # noqa: ANN001, ANN201  (importlib finder protocol)
        if fullname != _TARGET:
            return None
        try:
            sys.meta_path.remove(self)  # one-shot; also lets the find_spec below see the other finders (spec §1.3 E2)
        except ValueError:
            pass
        import importlib.util

        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        original_exec = spec.loader.exec_module

        def exec_module(module) -> None:  # noqa: ANN001
            original_exec(module)
            _register_quietly()

        spec.loader.exec_module = exec_module
        return spec


def lm_eval_main() -> None:
    """``lm_eval`` with the GLM models registered first, for interpreters that skip ``.pth`` files (``python -S``,
    locked-down site setups); spec §1.3 "Fallbacks". Never name such a script ``lm_eval``: it would shadow lm-eval's."""
    register()
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


def install() -> None:
    """Arrange for the registration; idempotent. Also the PEP 829 ``.start`` entry point."""
    try:
        if _TARGET in sys.modules:
            _register_quietly()  # lm-eval's registry already exists: register now
        elif not any(getattr(finder, _HOOK_FLAG, False) for finder in sys.meta_path):
            sys.meta_path.insert(0, _RegistryHook())
    except Exception as exc:  # pragma: no cover - defensive: start-up must never fail because of this file
        print(f"[glm-harness] lm_eval hook not installed: {exc!r}", file=sys.stderr)


install()
