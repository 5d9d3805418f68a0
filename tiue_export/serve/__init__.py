"""Serving and batch generation beyond one process, on Ray (``pip install 'tiue-export[serve]'``).

``worker`` holds what one replica or actor does (a runtime pipeline, the batch check, the PNG
metadata of ``tiue-export infer``) and imports no Ray; ``app`` is the Ray Serve application of
``tiue-export serve``, ``generate`` the Ray Data job of ``tiue-export generate``. Ray is imported
only by those two, and none of these modules imports torch.
"""
