"""Publishing a finished folder to the Hugging Face Hub: what is sent and whether the folder is ready
(`readiness`), retried calls that never leak a token (`calls`), and the push itself (`publish`).

May import: the base modules, `ssogen.inputs`, `ssogen.output` and `ssogen.generation`; it uses only the output
folder.
"""
