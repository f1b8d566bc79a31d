"""expkit: set up, run and keep track of computational experiments."""
