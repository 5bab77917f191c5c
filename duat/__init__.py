"""duat: Dynamic Universal Approximation Theory and the parallel Transformer Para-Former.

A small teaching and exploration kit (see docs/method.md for the method). The package
is laid out by idea, one module per idea:

    duat.runtime   device selection, seeding, the quick/full PROFILE switch, versions
    duat.storage   atomic writes of checkpoints and results; no silent overwrites
    duat.locations where results are read (the committed ones ship in duat/results/) and written
    duat.cli       the `duat` command line (`duat info`, `train`, `bench`, `reproduce`)

Later modules (theory, model, data, training, benchmark, widgets) are imported by name,
e.g. `from duat.runtime import select_device`. `import duat` itself stays light: it does
not import torch, torchvision, scikit-learn, matplotlib or ipywidgets.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
