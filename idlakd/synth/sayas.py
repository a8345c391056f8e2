"""TEMPORARY placeholder (lead's local testing; replaced by the real module)."""
class SayAsError(ValueError):
    pass
def say_as(interpret_as, text, lang="en", format=None, detail=None):
    if interpret_as == "characters":
        return " ".join(text)
    if text == "bad":
        raise SayAsError("bad")
    return text
