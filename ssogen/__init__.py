"""ssogen: generate SSO preference datasets with vLLM and publish them to the Hugging Face Hub.

The package follows a build's data. Each subpackage's ``__init__`` says what it owns; a package imports the
base modules and the packages before it in `LAYERS`, never one after it (`tests/test_layout.py` checks every
import):

    base        errors, files (atomic writes), hubmeta (Hub names and card vocabulary), config (the settings)
    inputs      what comes in: queries, the policy model, the principle library and templates, chat format, seeds
    output      the output folder: chunks, lock, export, views, card, reading a folder back, merge
    generation  the engine and everything run on it: flow, stages, steering, scoring, loop checks, plan, build,
                Ray, bench, doctor
    hub         publishing a folder to the Hub
    reading     what reads a finished build: inspect (tables, report), audit (judging)
    training    training a policy on a build with the SSO objective (TRL)
    cli         the command line, on top of everything
"""

__version__ = "0.1.0"

LAYERS = ("inputs", "output", "generation", "hub", "reading", "training")
