"""quantkit.runtime: executes a deployment bundle (NPU graphs in INT8, CPU work in FP).

The runtime depends only on the bundle format: it must never import calibration code,
AIMET or transformers' model classes (a test checks this). ``engine.BundleModel`` is the
executor; ``subgraphs`` cuts a prefill chunk into NPU/CPU subgraphs, ``scheduler`` runs
them (out-of-order or in order), ``npu`` holds the graph executors, ``shadow`` the
outlier path, ``generate`` the prompt-to-text loop of ``quantkit run``, ``bundle`` the
format checks, ``architecture`` the description of what each block computes (read
from the manifest; every family is one of its shapes).
"""

__all__: list[str] = []
