"""The tabs of the web UI, one module each: its handlers, its layout and its event wiring (see app.context.Tab)."""
