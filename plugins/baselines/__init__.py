"""Built-in classical baselines (``lungfuse.baselines`` entry points): logistic regression
for binary tasks; elastic-net Cox, ridge Cox and a random survival forest for survival."""
