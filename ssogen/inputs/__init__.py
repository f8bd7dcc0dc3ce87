"""What comes into a build: the queries (`sources`), the policy model (`models`), the principle library and the
prompt templates (`library`), the model's chat format (`chat`) and the seeds every random choice derives from
(`seeds`).

May import: the base modules only (errors, files, hubmeta, config). Nothing here starts an engine or writes a
dataset.
"""
