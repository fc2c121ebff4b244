"""Every test runs in float64: the gradient comparisons need its precision."""

import jax

jax.config.update("jax_enable_x64", True)
