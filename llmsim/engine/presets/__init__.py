"""Engine mode's shipped presets: one JSON file per model and hardware (`steptime.load_preset`)."""
