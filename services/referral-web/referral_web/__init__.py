"""referral-web: the referrer's page, the friend's landing page and the JSON read API."""
