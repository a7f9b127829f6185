"""One module per analysis of the paper. Each is a pure function of (model, bags, neurons, config)
that returns a :class:`kn_lens.results.Result`; none of them prints."""
