"""How good a candidate is: proxy training and zero-cost proxies (see issue: evaluators)."""
