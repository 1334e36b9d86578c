"""`python -m slimsr ...` (also what `torchrun -m slimsr` runs)."""

from slimsr.cli import main

if __name__ == "__main__":
    main()
