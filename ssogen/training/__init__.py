"""Training a policy on a build with the SSO objective: the main pair's loss plus both steering pairs' loss
weighted by W, on TRL.

May import: every package before it; it reads a build through `ssogen.output.readback`.
"""
