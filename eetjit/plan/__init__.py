"""Plan: model structure recognition (`structure`) and the graph specializations the runtime executes."""
