"""What the server said, heard. Where speech starts (`vad`), speech recognisers (`asr`), and content
checks of a sample during a run (`live`) or of saved audio after it (`check`, with `content`'s
error rates).
"""
