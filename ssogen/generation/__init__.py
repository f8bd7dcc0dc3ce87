"""Generation on one vLLM engine: the engine (`engine`, the only module that imports vllm), the continuous flow
(`flow`) driving each query's stages (`stages`: selection, steering, answers, loop checks, scoring), the method's
text functions (`steer`, `quality`, `scoring`), the validated plan of a build (`plan`), the build itself
(`pipeline`), Ray replicas (`distributed`), the benchmark (`bench`) and the self-test (`doctor`).

May import: the base modules, `ssogen.inputs` and `ssogen.output` (a build saves its chunks and exports the folder).
"""
