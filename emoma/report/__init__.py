"""Stage 5: results -> files a researcher reads. Rendering only: every number comes from the result types
(emoma.results) and emoma.metrics; figures are emoma.plots'. `cv` writes a cross-validation's files, `search` a
search's, `nested` a nested search's; `common` holds what they share."""
