"""Render the bundled sample image (a line of dark text on a light background), deterministic."""

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont


def main(path: Path = Path(__file__).with_name("sample_text.png")) -> None:
    image = Image.new("RGB", (192, 48), (236, 232, 222))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=26)
    draw.text((8, 8), "saliency 42", fill=(20, 20, 30), font=font)
    image.save(path, optimize=True)


if __name__ == "__main__":
    main()
