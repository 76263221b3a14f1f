"""electra_fast.kernels: the Triton kernels (setup.py ships this folder under that name).

In a source checkout the folder sits at the top level, so a Python started in the checkout's root (`python -m
electra_fast`, `python -c`, a notebook) would find it as a top-level `kernels` and shadow Hugging Face's package
of that name, which transformers imports to build any model. Imported under that name, this file steps aside: it
loads the `kernels` that the rest of sys.path holds, or fails as Python fails where there is none.
"""
if __name__ == "kernels":
    import importlib.machinery
    import importlib.util
    import os
    import sys

    def _is_checkout(entry):
        """A source checkout of electra-fast (this one or another: two would find each other in turn)."""
        root = os.path.realpath(entry or os.curdir)
        return all(os.path.exists(os.path.join(root, *part)) for part in
                   (("setup.py",), ("electra_fast", "__init__.py"), ("kernels", "__init__.py")))

    _spec = importlib.machinery.PathFinder.find_spec(__name__, [p for p in sys.path if not _is_checkout(p)])
    if _spec is None:
        raise ModuleNotFoundError(f"No module named {__name__!r}", name=__name__)
    _module = importlib.util.module_from_spec(_spec)
    sys.modules[__name__] = _module  # what `import kernels` returns, and what its submodules' imports find
    _spec.loader.exec_module(_module)
