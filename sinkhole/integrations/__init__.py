"""Where interpretability people work: TransformerLens 4, nnsight, SAELens. Each module imports its
package only inside functions that need it (most need none: they read what the package returns),
so `sinkhole` never depends on them. Versions and what co-installs: docs/interp.md."""
