"""The coupon issuance service: Sanic app, issue path, event lifecycle."""
