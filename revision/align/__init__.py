"""ReAlign and baseline methods: out-of-core passes over feature stores."""
