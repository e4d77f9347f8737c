"""The napari side of napari-unetseg: the dock widget (:mod:`._main`), its panels, jobs and reader.

Layout: image, model and device at the top; a Segment panel (:mod:`._segment`); an Annotate &
fine-tune panel (:mod:`._finetune`). Work runs in napari worker threads over the plain generators
of :mod:`._jobs`; this package only turns layers into arrays and results into layers. Modules are
imported on use, so the checkpoint reader does not load PyTorch or the widget.
"""
