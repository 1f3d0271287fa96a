"""Tools a user runs beside the pipeline: synthetic data (:mod:`.datagen`), evaluation against ground truth (:mod:`.evaluation`), the HTML report (:mod:`.report`)."""
