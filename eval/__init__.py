"""quantkit.eval: perplexity and accuracy evaluation of FP and quantized models."""

from quantkit.eval.perplexity import perplexity

__all__ = ["perplexity"]
