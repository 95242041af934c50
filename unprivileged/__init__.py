"""The unprivileged side: smcrouted's controller, smcroutectl, config, engine."""
