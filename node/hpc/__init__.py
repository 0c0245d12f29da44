"""HPC sites: the test site haorch starts (SLURM + munge + slurmdbd + an SSH login node) and the SSH/SLURM layer the
worker's HPC executors use to reach any site."""
