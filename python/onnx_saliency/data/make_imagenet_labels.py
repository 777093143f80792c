"""Write imagenet_labels.txt: the 1,000 ImageNet-1k class names in class-index order, one a line,
as torchvision ships them (`ResNet50_Weights.IMAGENET1K_V1.meta["categories"]`; torchvision is a
test extra, not a runtime dependency, so the names are kept as this small text file).

    python python/onnx_saliency/data/make_imagenet_labels.py
"""

from pathlib import Path


def categories() -> list[str]:
    from torchvision.models import ResNet50_Weights
    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def main(path: Path = Path(__file__).with_name("imagenet_labels.txt")) -> None:
    names = categories()
    assert len(names) == 1000 and all(n and "\n" not in n for n in names)
    path.write_text("\n".join(names) + "\n", encoding="utf-8")
    print(f"wrote {path} ({len(names)} names)")


if __name__ == "__main__":
    main()
