"""One client per external service: Replicate (captions), Pika (videos), GAME (callbacks)."""
