//! The shared priority queue of waiting requests, one per model group.
