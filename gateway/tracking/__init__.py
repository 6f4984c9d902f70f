"""Website tracking: the snippet (`nurture.js`), publishable site keys, CORS, bot and privacy filters,
rate limits, signed link tokens and the batching of collected events (routes: gateway/routes/tracking.py)."""
