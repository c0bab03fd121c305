"""ResNet50 in the form TorchServe's stock image_classifier examples ship it (a model file)."""

from torchvision.models.resnet import Bottleneck, ResNet


class ImageClassifier(ResNet):
    def __init__(self) -> None:
        super().__init__(Bottleneck, [3, 4, 6, 3])
