"""quantkit.runtime: executes a deployment bundle (NPU graphs in INT8, CPU work in FP).

The runtime depends only on the bundle format: it must never import calibration code,
AIMET or transformers' model classes (a test checks this). ``quantkit.runtime.engine``
holds the executor (``BundleModel``), ``quantkit.runtime.bundle`` the format checks.
"""

__all__: list[str] = []
