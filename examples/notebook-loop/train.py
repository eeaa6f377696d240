"""Your training code. Here it runs the built-in trainer (transformers + PEFT) on model/ and
data/ with the params of model.yaml (PARAM_* and params.json); edit it in the notebook, and on
exit `sub notebook --trainer` writes the manifest that runs it as a Model."""

import runpy

runpy.run_module("substratus.workloads.trainer", run_name="__main__")
