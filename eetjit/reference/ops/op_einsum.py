"""Einsum: Einstein summation over the operands, given an ``equation`` like "bij,bjk->bik".

Implicit form (no "->"): the output labels are those appearing exactly once, sorted by
ASCII (upper case before lower case), after the ellipsis dims. Spaces are ignored.
"""
import numpy as np

from eetjit.reference.registry import register


def explicit_equation(equation: str) -> str:
    eq = equation.replace(" ", "")
    if "->" in eq:
        return eq
    terms = eq.split(",")
    letters = [c for t in terms for c in t.replace("...", "") if c.isalpha()]
    once = sorted((c for c in set(letters) if letters.count(c) == 1), key=ord)
    ellipsis = "..." if "..." in eq else ""
    return eq + "->" + ellipsis + "".join(once)


def einsum(equation: str, *operands: np.ndarray) -> np.ndarray:
    ops = [np.asarray(o) for o in operands]
    dtype = ops[0].dtype
    if dtype.kind == "f":
        # accumulate in float64, round once to the operands' float type
        out = np.einsum(explicit_equation(equation), *[o.astype(np.float64) for o in ops])
    else:
        out = np.einsum(explicit_equation(equation), *ops)
    return np.asarray(out).astype(dtype)


@register("Einsum")
def _einsum(inputs, attrs, opset):
    eq = attrs["equation"]
    if isinstance(eq, bytes):
        eq = eq.decode()
    return [einsum(eq, *[x for x in inputs if x is not None])]
