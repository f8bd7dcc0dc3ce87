"""The output folder, in the Hub's dataset layout: finished chunks (`store`), one writer at a time (`lock`), the
export swapped in whole (`export`, `gather`, `swap`), the configs (`views`), the dataset card (`card`, `plots`),
reading a folder or Hub dataset back (`readback`, `audit_summary`) and merging shards (`merge`).

May import: the base modules and `ssogen.inputs`. It needs no engine, so generation, the Hub and the readers all
build on it.
"""
