"""The rule table, most specific first. One fused op (with its variants) per file.

Order matters where two rules could claim the same node: Embedding runs before the residual AddNorm rules
(GPT-2's wte+wpe Add would otherwise look like a residual add), Linear before its activation epilogues and
the QKV merge, and attention after the projections it reads are Linears.
"""
from eetjit.rewrite.rule import Rule
from eetjit.rewrite.rules import (activation, add_norm, attention, embedding, layer_norm, linear, qkv, rms_norm,
                                  rotary, swiglu)

RULES: list[Rule] = [
    *layer_norm.RULES,
    *rms_norm.RULES,
    *embedding.RULES,
    *linear.RULES,
    *activation.RULES,
    *swiglu.RULES,
    *qkv.RULES,
    *rotary.RULES,
    *attention.RULES,
    *add_norm.RULES,
]
