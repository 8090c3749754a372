//! Where snapshots go: StatsD, Riemann, stdout.
