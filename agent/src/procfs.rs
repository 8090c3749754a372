//! System metrics from /proc (memory, swap, CPU, PSI, load).
