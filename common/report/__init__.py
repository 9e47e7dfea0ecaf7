"""Reports from result files: the builder (build.py), its HTML, index, plots and decision summary, the validity
checks and `compare`.

The helpers (index, plots, markdown_table) are what each stage type uses for its own report section; the builder,
summary, decision and validity ask the stage registry. Kept empty of imports, so a stage importing a helper does
not import the builder."""
